"""The Containerfile is multi-stage, slim and non-root; the build context holds what the
builder copies and nothing else."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deploy import REPO, pod_spec, render


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]


def containerfile_stages() -> list[Stage]:
    """The Containerfile's stages: instruction keyword and argument, continuations joined."""
    text = (REPO / "Containerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 else None, []))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def test_the_image_is_built_in_two_stages_and_runs_only_the_venv_as_non_root() -> None:
    stages = containerfile_stages()
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder" and final.base == builder.base == "python:3.11-slim"
    runs = " ".join(arg for kw, arg in builder.instructions if kw == "RUN")
    assert "pip wheel" in runs and "/opt/nodefence" in runs
    copies = [arg for kw, arg in final.instructions if kw == "COPY"]
    assert copies == ["--from=builder /opt/nodefence /opt/nodefence"]
    final_runs = " ".join(arg for kw, arg in final.instructions if kw == "RUN")
    # The one package install allowed: fence-agents, only when asked for, lists removed.
    optional = re.search(r'if \[ "\$WITH_FENCE_AGENTS" = 1 \]; then(.*?); *fi', final_runs)
    assert optional is not None, "the fence-agents option is missing"
    assert "install -y -qq --no-install-recommends fence-agents ipmitool" in optional[1]
    assert "rm -rf /var/lib/apt/lists/*" in optional[1]
    final_runs = final_runs.replace(optional[0], "")
    for tool in ("pip", "apt-get", "gcc", "build-essential", "make"):
        assert tool not in final_runs, f"the final image must not get {tool}"
    (user,) = [arg for kw, arg in final.instructions if kw == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0"
    for kind in ("DaemonSet", "Deployment"):
        pod = pod_spec(render("base"), kind)["securityContext"]
        assert int(uid) == pod["runAsUser"]  # runAsNonRoot needs a numeric user
    assert ("ENTRYPOINT", '["nodefence"]') in final.instructions


def dockerignore_keeps(path: str) -> bool:
    """Whether the build context keeps `path`, under .dockerignore's last-match-wins rules."""
    keep = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(/.*)?", path):
            keep = negate
    return keep


def test_the_build_context_holds_what_the_builder_copies_and_nothing_else() -> None:
    (builder, _) = containerfile_stages()
    sources = [
        src
        for kw, arg in builder.instructions
        if kw == "COPY"
        for src in arg.split()[:-1]
        if not src.startswith("--")
    ]
    assert sources
    for src in sources:
        assert (REPO / src).exists() and dockerignore_keeps(src), src
    for private in ("tests/conftest.py", ".git/config", "run/x", "deploy/base/agent.yaml"):
        assert not dockerignore_keeps(private), private
    assert not dockerignore_keeps("agent/__pycache__/cli.cpython-311.pyc")


@pytest.mark.timeout(240)
def test_the_wheel_builds_from_what_the_builder_copies(tmp_path: Path) -> None:
    """The image's wheel is built from the COPY sources alone: they must hold every folder
    pyproject.toml maps into the `nodefence` package, and the wheel every module."""
    (builder, _) = containerfile_stages()
    src = tmp_path / "src"
    for kw, arg in builder.instructions:
        if kw != "COPY":
            continue
        *sources, dest = (a for a in arg.split() if not a.startswith("--"))
        for source in sources:
            target = src / dest if dest not in ("./", ".") else src
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target / Path(source).name)
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels")]
    done = subprocess.run(
        [sys.executable, "-m", "pip", *build, str(src)],
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "wheels").glob("nodefence-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "nodefence/__init__.py" in names
    assert "nodefence/agent/fencing/machine.py" in names
    assert "nodefence/backends/ipmi/worker.py" in names
