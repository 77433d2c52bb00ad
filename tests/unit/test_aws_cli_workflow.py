"""The README's AWS CLI workflow with the real `aws` CLI against a CLC and a Walrus on
loopback (a stand-in CC places the instance on a loopback address): every command it runs
is understood, the image goes up as a multipart upload, the user data is served to the
instance. tests/integration/test_aws_cli.py runs the same block on the real deployment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.common.events import read_events
from tests.integration.test_aws_cli import readme_workflow

from tests.support.clc_client import FakeCC, ec2_client, get_from, s3_client
from tests.support.processes import ADMIN, clc_and_walrus

pytestmark = pytest.mark.loopback  # starts processes (tests/conftest.py)


def test_the_readme_s_aws_cli_workflow_against_the_components(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "credentials").write_text(f"[default]\naws_access_key_id = {ADMIN['access_key']}\n"
                                     f"aws_secret_access_key = {ADMIN['secret_key']}\n")
    with FakeCC(["127.0.0.2"]) as cc, clc_and_walrus(tmp_path / "cloud", endpoints={"cc": {"cluster1": cc.url}},
                                                      cluster_poll_s=0.05) as (clc, walrus, _):
        script = (readme_workflow().replace("http://10.0.0.10:8773", clc).replace("http://10.0.0.20:8773", walrus)
                  .replace("curl -s -m 5 http://$EIP/", "echo elastic IP $EIP"))  # no instance listens here
        (tmp_path / "workflow.sh").write_text("set -euo pipefail\n" + script + 'echo "RESULT $IID $VOL"\n')
        out = subprocess.run(["bash", str(tmp_path / "workflow.sh")], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                                               "RUN": str(run), "HOME": str(tmp_path)})
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        iid, vol = next(l for l in out.stdout.splitlines() if l.startswith("RESULT")).split()[1:]
        assert "image.img" in out.stdout  # `aws s3 ls` listed it
        ec2, s3 = ec2_client(clc), s3_client(walrus)
        inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        assert inst["PublicIpAddress"] and inst["SecurityGroups"][0]["GroupName"] == "cli-web"
        assert get_from(clc, "/latest/user-data", inst["PrivateIpAddress"]) == \
            (200, "#!/bin/sh\necho configured by user-data\n")
        assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["Attachments"][0]["InstanceId"] == iid
        assert "Contents" not in s3.list_objects_v2(Bucket="cli-images")  # `aws s3 rm` removed it
    uploads = [e for e in read_events(tmp_path / "cloud" / "walrus" / "events.jsonl") if e["event"] == "upload.part"]
    assert len(uploads) == 2  # 12 MiB went up as a multipart upload of two parts
