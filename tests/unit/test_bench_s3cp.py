"""The s3cp benchmark's copy, against a Walrus and moto's server on loopback (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.bench.cloud_walrus import ADMIN, moto_process, walrus_process
from experiments.bench.s3cp import MOTO_ENV, cli_round_trip, local

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)


def test_cli_round_trip_copies_up_and_back_through_both_servers(tmp_path: Path):
    src = tmp_path / "file.bin"
    src.write_bytes(os.urandom(9 * 2**20 + 5))  # above the CLI's 8 MiB multipart threshold
    walrus_env = (f"AWS_ACCESS_KEY_ID={ADMIN['access_key']} AWS_SECRET_ACCESS_KEY={ADMIN['secret_key']} "
                  "AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_DEFAULT_REGION=eucalyptus")
    with walrus_process(tmp_path) as (url, _):
        up, down = cli_round_trip(local, url, walrus_env, src, tmp_path / "down.bin", "bench")
    assert up > 0 and down > 0 and not (tmp_path / "down.bin").exists()
    with moto_process() as (url, _):
        assert min(cli_round_trip(local, url, MOTO_ENV, src, tmp_path / "down.bin", "bench")) > 0
