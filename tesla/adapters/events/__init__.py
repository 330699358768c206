"""Event sinks and readers: the JSON-lines run log, rich progress and TensorBoard."""
