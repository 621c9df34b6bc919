from .differential import STATS, summary


def pytest_terminal_summary(terminalreporter):
    if STATS["graphs"]:
        terminalreporter.write_line(summary())
