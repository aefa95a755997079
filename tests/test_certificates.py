"""``python -m fedvssl.federated.certificates``: the files a secured deployment needs, and its one-line errors."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedvssl.federated.certificates import main


def test_writes_a_ca_a_server_certificate_and_node_keys(tmp_path, capsys):
    out = tmp_path / "certs"
    main(["--out", str(out), "--nodes", "2", "--host", "server.example.org"])
    written = ["ca.crt", "ca.key", "server.pem", "server.key", "node-0.key", "node-0.pub", "node-1.key", "node-1.pub"]
    assert sorted(p.name for p in out.iterdir()) == sorted(written)
    assert capsys.readouterr().out.splitlines() == [str(out / n) for n in written]
    for name in ("ca.key", "server.key", "node-0.key", "node-1.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name

    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    alt = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # The named host, and the loopback names the SuperLink's own ServerApp process connects through.
    assert alt.get_values_for_type(x509.DNSName) == ["server.example.org", "localhost"]
    assert alt.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    # SuperNode keys: OpenSSH EC P-384, the form flower-supernode and `flwr supernode register` read.
    private = serialization.load_ssh_private_key((out / "node-0.key").read_bytes(), None)
    public = serialization.load_ssh_public_key((out / "node-0.pub").read_bytes())
    assert isinstance(private.curve, ec.SECP384R1)
    assert public.public_numbers() == private.public_key().public_numbers()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--host", "bad host"], "--host 'bad host' is neither an IP address nor a DNS name"),
        (["--nodes", "-1"], "--nodes -1 must be 0 or more"),
        (["again"], "ca.crt exists; give an empty folder as --out"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, expected):
    out = tmp_path / "certs"
    if args == ["again"]:
        main(["--out", str(out), "--nodes", "0"])
        before = (out / "ca.crt").read_bytes()
        capsys.readouterr()
        args = []
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(out), *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fedvssl: error: ") and expected in err[0], err
    if expected.startswith("ca.crt"):
        assert (out / "ca.crt").read_bytes() == before  # the existing CA is kept
