"""Extra ``gradleak`` sub-commands, one module each.

Every module here defines ``add_parser(subparsers) -> None`` which adds its sub-command and sets
``func`` on the parser (``func(args) -> int``); ``gradleak.cli`` discovers the modules itself.
"""
