"""The README's AWS CLI workflow, run as it stands there, on the user host of the real
deployment: a multipart image upload, an instance with a user-data file (read back from
inside the instance through the metadata service), an elastic IP answering HTTP, a volume
attached; and `aws s3 ls/rm` around it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path



README = Path(__file__).resolve().parents[2] / "README.md"
RESULT = "cli-result"


def readme_workflow() -> str:
    """The shell block between the README's aws-cli-workflow markers."""
    text = README.read_text()
    found = re.search(r"<!-- aws-cli-workflow -->\n```sh\n(.*?)```\n<!-- /aws-cli-workflow -->", text, re.S)
    assert found, "README.md lost its aws-cli-workflow block"
    return found.group(1)


def test_the_readme_s_aws_cli_workflow_runs_from_the_user_host(deployment):
    work = deployment.run_dir / "aws-cli"
    work.mkdir(exist_ok=True)
    script = work / "workflow.sh"
    # The README's block as it stands, then what the test checks: the variables it set.
    script.write_text("set -euo pipefail\n" + readme_workflow()
                      + f'echo "{RESULT} $EMI $IID $EIP $VOL"\n$S3 ls s3://cli-images/ || true\n')
    # Traced (bash -x) and without Python's deprecation warnings, so a failure shows its step.
    out = deployment["user"].cmd(
        f"cd {work} && RUN={deployment.run_dir} PATH={Path(sys.executable).parent}:$PATH PYTHONWARNINGS=ignore "
        f"timeout 300 bash -x {script} 2>&1; echo exit=$?")
    body, _, status = out.rstrip().rpartition("exit=")
    assert status.strip() == "0", body[-3000:]
    lines = [l.strip() for l in body.splitlines() if not l.startswith("+")]  # output, not the trace
    at = next(i for i, l in enumerate(lines) if l.startswith(RESULT))
    emi, iid, eip, vol = lines[at].split()[1:]
    assert iid in lines[:at]  # curl http://$EIP/ answered the instance's id
    assert "attached" in lines[:at]
    assert any(l.endswith(" image.img") for l in lines[:at])  # `aws s3 ls` listed the upload
    assert not any("image.img" in l for l in lines[at + 1:])  # and `aws s3 rm` removed it

    ec2 = deployment.aws_client("ec2")
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert inst["PublicIpAddress"] == eip and inst["ImageId"] == emi
    listing = json.loads(deployment["c1cc1"].cmd(
        f"curl -s -H 'X-Eucalab-Internal-Token: {deployment.internal_token}' http://10.0.1.10:8774/cluster/instances"))
    slot = next(i["slot"] for i in listing["instances"] if i["id"] == iid)
    got = deployment[slot].cmd("curl -s -m 3 http://169.254.169.254/latest/user-data").replace("\r\n", "\n")
    assert got == (work / "user-data.sh").read_text() == "#!/bin/sh\necho configured by user-data\n"
    ec2.detach_volume(VolumeId=vol)
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.release_address(PublicIp=eip)
