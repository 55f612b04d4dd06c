"""`nodefence --version` and the `nodefence_build_info` metric say which build runs."""

from __future__ import annotations

import platform
import urllib.request

from nodefence.agent import __version__
from nodefence.agent.observe import metrics
from nodefence.agent.observe.build_info_files import commit
from tests.conftest import run_cli


def test_the_metrics_endpoint_says_version_commit_and_python() -> None:
    port = metrics.serve("127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    [line] = [x for x in text.splitlines() if x.startswith("nodefence_build_info{")]
    assert f'version="{__version__}"' in line and f'commit="{commit()}"' in line
    assert f'python="{platform.python_version()}"' in line and line.endswith(" 1.0")


async def test_version_names_commit_build_date_and_the_libraries() -> None:
    r = await run_cli("--version")
    assert r.code == 0, r.err
    assert r.out.startswith(f"nodefence {__version__}\ncommit ")
    assert "built " in r.out and "pyghmi " in r.out and "kubernetes " in r.out
