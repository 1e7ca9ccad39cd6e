from resilience.cli import run

run()
