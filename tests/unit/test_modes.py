"""The networking modes' table of features, where it is shown, and the CLC's refusals."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from rich.console import Console

from components.common.modes import FEATURES, MANAGED_MODES, MODES, features, table_markdown
from topologies.describe import print_description
from topologies.plan import build_plan
from topologies.spec import DeploymentSpec, NetworkMode

from tests.support.clc_client import code_of, ec2_client
from tests.support.processes import clc_and_walrus

from .test_clc_api import dump

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_table_follows_eucalyptus_per_mode():
    for mode in ("SYSTEM", "STATIC"):  # no elastic IPs, no security groups, no VM isolation
        f = FEATURES[mode]
        assert not (f.elastic_ips or f.security_groups or f.l2_isolation or f.metadata)
    novlan, managed = FEATURES["MANAGED-NOVLAN"], FEATURES["MANAGED"]
    assert novlan.elastic_ips and novlan.security_groups and novlan.metadata and not novlan.l2_isolation
    assert managed.elastic_ips and managed.security_groups and managed.metadata and managed.l2_isolation
    assert set(MODES) == set(FEATURES) == {m.value for m in NetworkMode}
    edge = FEATURES["EDGE"]  # Eucalyptus 4: the groups on every NC, no CC in the path, no VLANs
    assert edge.elastic_ips and edge.security_groups and edge.metadata and not edge.l2_isolation
    assert not edge.cc_router and "NC" in dict(edge.rows())["metadata service"]
    assert MANAGED_MODES == ("MANAGED-NOVLAN", "MANAGED")
    assert [m.value for m in NetworkMode if m.private_cluster_network] == ["MANAGED", "MANAGED-NOVLAN"]
    with pytest.raises(ValueError, match="unknown networking mode 'FLAT'"):
        features("FLAT")


def test_readme_and_describe_show_the_table():
    assert table_markdown() in README.read_text()
    for mode in NetworkMode:
        buf = io.StringIO()
        print_description(build_plan(DeploymentSpec(mode=mode, vlan_clean=True)), console=Console(file=buf, width=240))
        text = buf.getvalue()
        for name, value in features(mode.value).rows():
            assert name in text and value in text, (mode, name, value)


@pytest.fixture(scope="module", params=["SYSTEM", "STATIC"])
def flat_clc(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param.lower())
    with clc_and_walrus(tmp, mode=request.param) as (base, _, _):
        yield request.param, base, tmp


REFUSED = [
    ("allocate_address", {}),
    ("associate_address", {"InstanceId": "i-12345678", "PublicIp": "10.0.128.1"}),
    ("disassociate_address", {"PublicIp": "10.0.128.1"}),
    ("authorize_security_group_ingress", {"GroupName": "default", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
    ("revoke_security_group_ingress", {"GroupName": "default", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
]


@pytest.mark.parametrize("call,kwargs", REFUSED, ids=[c for c, _ in REFUSED])
def test_flat_modes_refuse_what_they_lack(flat_clc, call, kwargs):
    mode, base, tmp = flat_clc
    ec2 = ec2_client(base)
    before = dump(tmp)
    with pytest.raises(ClientError) as err:
        getattr(ec2, call)(**kwargs)
    assert code_of(err.value) == "UnsupportedOperation"
    assert f"{mode} networking mode" in err.value.response["Error"]["Message"]
    assert dump(tmp) == before
    assert ec2.describe_addresses()["Addresses"] == []


def test_flat_modes_keep_groups_as_names(flat_clc):
    """Groups stay names an instance is launched in; only their rules are refused."""
    _, base, _ = flat_clc
    ec2 = ec2_client(base)
    ec2.create_security_group(GroupName="web", Description="a name only")
    assert {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]} >= {"default", "web"}
