"""The Textual terminal UI: ``TeslaApp`` (tesla.app.tui.app) over ``RunState`` (tesla.app.tui.state)."""
