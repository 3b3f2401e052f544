"""The command-line tools, installed as the package `flm_tools` with a console command each (setup.py's
CONSOLE_SCRIPTS: flm-grow, flm-export, ...); `python tools/<name>.py` runs the same `main`."""
