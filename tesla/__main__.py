from tesla.app.cli.main import app

app()
