"""The SROS2 keystore script and policy, checked as files (openssl verifies; DDS cannot here).

The PyPI Fast DDS has no security plugins, so SROS2 cannot run on this machine: this test checks
what can be checked without it. openssl must verify every signature against the keystore's CA, each
certificate's subject must be its enclave, and the permissions must say what the policy promises
(protector may call retrieve, only the admin may call add/remove, only egress publishes
/reid/protected, no enclave outside the robot touches an internal name).
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INTERNAL = ("rt/camera/image_raw", "rt/latent_rag/crops", "rt/latent_rag/protected")


def _grants(ks: Path) -> dict[str, tuple[set[str], set[str]]]:
    out = {}
    for perm in sorted((ks / "enclaves").rglob("permissions.xml")):
        root = ET.parse(perm).getroot()
        rule = root.find("permissions/grant/allow_rule")
        pub = {t.text for t in rule.iterfind("publish/topics/topic")}
        sub = {t.text for t in rule.iterfind("subscribe/topics/topic")}
        assert root.find("permissions/grant/default").text == "DENY"
        out[root.find("permissions/grant").get("name")] = (pub, sub)
    return out


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    ks = tmp_path_factory.mktemp("sros2") / "keystore"
    done = subprocess.run(["bash", str(ROOT / "tools" / "make_sros2_keystore.sh"), str(ks), "42"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ks


def test_keystore_files_are_signed_by_its_ca(keystore: Path) -> None:
    ca = keystore / "public" / "ca.cert.pem"
    enclaves = sorted(p.parent for p in (keystore / "enclaves").rglob("cert.pem"))
    assert len(enclaves) == 8
    assert (keystore / "private" / "ca.key.pem").stat().st_mode & 0o077 == 0
    for d in enclaves:
        name = "/" + str(d.relative_to(keystore / "enclaves"))
        for f in ("key.pem", "identity_ca.cert.pem", "permissions_ca.cert.pem", "governance.p7s", "permissions.p7s"):
            assert (d / f).is_file(), f"{d / f} missing"
        assert (d / "key.pem").stat().st_mode & 0o077 == 0
        subject = subprocess.run(["openssl", "x509", "-in", str(d / "cert.pem"), "-noout", "-subject"],
                                 capture_output=True, text=True, check=True).stdout
        assert subject.strip().replace(" ", "") == f"subject=CN={name}"
        subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(d / "cert.pem")], check=True,
                       capture_output=True)
        for signed in ("permissions.p7s", "governance.p7s"):
            subprocess.run(["openssl", "smime", "-verify", "-in", str(d / signed), "-CAfile", str(ca),
                            "-out", "/dev/null"], check=True, capture_output=True)
        perm = ET.parse(d / "permissions.xml").getroot()
        assert perm.find("permissions/grant/subject_name").text == f"CN={name}"
        assert perm.find("permissions/grant/allow_rule/domains/id").text == "42"
    gov = ET.parse(keystore / "enclaves" / "governance.xml").getroot()
    rule = gov.find("domain_access_rules/domain_rule")
    assert rule.find("allow_unauthenticated_participants").text == "false"
    assert rule.find("topic_access_rules/topic_rule/data_protection_kind").text == "ENCRYPT"


def test_permissions_say_what_the_policy_promises(keystore: Path) -> None:
    g = _grants(keystore)
    retrieve_req = "rq/latent_rag/retrieve_latentsRequest"
    add_req, remove_req = "rq/latent_rag/add_identitiesRequest", "rq/latent_rag/remove_identitiesRequest"
    # the protector may call retrieve (directly or via the relay), nothing else of the store
    assert retrieve_req in g["/latent_rag/protector_node"][0]
    assert "rq/latent_rag/relay/retrieve_latentsRequest" in g["/latent_rag/protector_node"][0]
    # only the admin enclave may call add / remove; the store answers them
    callers = {name for name, (pub, _) in g.items() if add_req in pub or remove_req in pub}
    assert callers == {"/latent_rag/admin"}
    assert {add_req, remove_req, retrieve_req} <= g["/latent_rag/store_node"][1]
    # only egress publishes /reid/protected
    assert {name for name, (pub, _) in g.items() if "rt/reid/protected" in pub} == {"/latent_rag/egress_node"}
    # off-robot enclaves never touch an internal name
    for name in ("/latent_rag/store_node", "/latent_rag/admin", "/latent_rag/reid_client", "/latent_rag/relay_node"):
        pub, sub = g[name]
        assert not (pub | sub) & set(INTERNAL), name
    # egress reads the protector's topic but no raw data
    assert g["/latent_rag/egress_node"][1] & set(INTERNAL) == {"rt/latent_rag/protected"}
