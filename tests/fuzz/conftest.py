from .differential import STATS


def pytest_terminal_summary(terminalreporter):
    if STATS["graphs"]:
        per_pass = ", ".join(f"{name} {STATS['rewrites'][name]} rewrites in {STATS['exercised'][name]} runs"
                             for name in sorted(STATS["exercised"]))
        terminalreporter.write_line(f"fuzz: {STATS['graphs']} graphs, {STATS['checks']} compiled modules checked, "
                                    f"{STATS['failures']} mismatches; {per_pass}")
