"""The OpenAPI spec matches the service: schemathesis, all checks, against a real
`csipos serve` (bounded examples, deterministic generation), plus what the spec says."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import ADMIN_KEY, Server

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_spec_documents_our_errors_auth_and_ids(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ErrorBody" in schemas
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "API key with the `locate` scope (inference, listing) or `admin` (all).",
    }
    locate = spec["paths"]["/locate"]["post"]
    assert locate["security"] == [{"bearer": []}]
    for status in ("400", "401", "403", "404", "413", "415", "422", "503", "500"):
        ref = locate["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorBody"
    assert "Retry-After" in locate["responses"]["503"]["headers"]
    assert locate["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/LocateResponse"
    )
    v2 = spec["paths"]["/v2/models/{site}/infer"]["post"]
    assert v2["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/KServeErrorBody"
    )
    site = spec["paths"]["/sites/{site_id}"]["get"]["parameters"][0]
    assert site["schema"]["pattern"] == "^[a-z0-9][a-z0-9_-]{0,62}$"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_schemathesis_all_checks_pass(start_server: Callable[..., Server], tmp_path: Path) -> None:
    st = shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        pytest.skip("schemathesis not installed (pip install -e .[dev])")
    server = start_server()
    result = subprocess.run(
        [
            st,
            "--config-file",
            str(CONFIG),
            "run",
            server.url + "/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--generation-deterministic",
            "--no-color",
            "-H",
            f"Authorization: Bearer {ADMIN_KEY}",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,  # its example cache (.schemathesis/) stays out of the checkout
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1]
