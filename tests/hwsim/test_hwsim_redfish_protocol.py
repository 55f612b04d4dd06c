"""hwsim's Redfish emulator as real BMCs are: DMTF's Redfish Protocol Validator (PyPI
`redfish-protocol-validator`) run against `nodefence-hwsim bmcs` reports no failure.

The validator is a third-party witness: it checks the service root and `/redfish`, the OData
service and metadata documents (served without credentials), 405 with `Allow` for unsupported
methods, `Allow` and `Link: rel=describedby` on every GET/HEAD, 412 for an unsupported
OData-Version, session login through `.../Sessions` and `.../Sessions/Members`, the
predefined roles, TLS, and authentication of every read and write.

The validator also looks for Redfish services on the LAN by SSDP (multicast M-SEARCH to
239.255.255.250 and ff02::c). Tests send nothing beyond 127.0.0.1, and the emulator offers no
SSDP, so the validator runs with that discovery switched off (its SSDP assertions are then
"not tested"); everything else runs as shipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO

VALIDATOR = Path(sys.executable).parent / "rf_protocol_validator"
# The validator's own entry point, with SSDP discovery (LAN multicast) replaced by "found none".
WITHOUT_SSDP = (
    "import sys, redfish_protocol_validator.service_details as details\n"
    "details.pre_ssdp = lambda sut: None\n"
    "from redfish_protocol_validator.console_scripts import main\n"
    "sys.exit(main())\n"
)


def test_the_protocol_validator_reports_no_failure_against_hwsim_bmcs(tmp_path: Path) -> None:
    assert VALIDATOR.exists(), "pip install -e '.[test]' installs redfish-protocol-validator"
    ready = tmp_path / "ready"
    bmcs = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodefence.hwsim.cli",
            "bmcs",
            "--nodes",
            "1",
            "--inventory-out",
            str(tmp_path / "bmcs" / "inventory.yaml"),
            "--ready-file",
            str(ready),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert bmcs.poll() is None, f"nodefence-hwsim bmcs ended: {bmcs.stderr}"
            assert time.monotonic() < deadline, "nodefence-hwsim bmcs did not get ready"
            time.sleep(0.05)
        inventory = yaml.safe_load((tmp_path / "bmcs" / "inventory.yaml").read_text())
        [redfish] = inventory["nodes"]["node-1"]["levels"][1]["devices"]
        ca = tmp_path / "bmcs" / redfish["ca_file"]
        password = (tmp_path / "bmcs" / redfish["password_file"]).read_text().strip()
        reports = tmp_path / "reports"
        # requests lets REQUESTS_CA_BUNDLE win over a session's own CA: point it at the run's.
        env = {k: v for k, v in os.environ.items() if k not in ("CURL_CA_BUNDLE", "HTTPS_PROXY")}
        env["REQUESTS_CA_BUNDLE"] = str(ca)
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                WITHOUT_SSDP,
                "--rhost",
                f"https://127.0.0.1:{redfish['port']}",
                "--user",
                redfish["username"],
                "--password",
                password,
                "--ca-bundle",
                str(ca),
                "--report-dir",
                str(reports),
                "--report-type",
                "tsv",
                "--avoid-http-redirect",  # no plain-HTTP port to redirect from
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=tmp_path,
        )
    finally:
        os.killpg(bmcs.pid, signal.SIGTERM)
        bmcs.wait(timeout=10)
    summary = json.loads((reports / "results.json").read_text())["TestResults"]
    counts = summary["Protocol Validations"]
    failures = [
        line
        for tsv in reports.glob("*.tsv")
        for line in tsv.read_text().splitlines()
        if "\tFAIL\t" in line
    ]
    assert counts["fail"] == 0, "\n".join(failures) or done.stdout[-3000:]
    assert counts["pass"] >= 200, counts  # it tested what it knows to test, not nothing
