"""The inspectors' web application: `create_app` (web/app.py), served by `ncpi web` (web/server.py).

One module per user task in routes/, over the application layer (ncpi_workflow/app); identity
from one dependency (auth.current_user); pages in templates/ with the GOV.UK Frontend macros.
"""
