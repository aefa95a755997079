"""Certificates and keys for a secured Flower deployment (TLS plus SuperNode authentication).

``python -m fedvssl.federated.certificates --out DIR [--host NAME ...] [--nodes N]`` writes:

- ``ca.crt`` / ``ca.key``: a self-signed certificate authority (keep ``ca.key`` private);
- ``server.pem`` / ``server.key``: the SuperLink's TLS certificate, signed by the CA, valid for
  every ``--host`` (IP addresses and DNS names; default 127.0.0.1 and localhost, which the
  SuperLink's own ServerApp process also needs, since it connects over loopback);
- ``node-<k>.key`` / ``node-<k>.pub`` for k = 0..N-1: each SuperNode's authentication key
  pair, EC P-384 in OpenSSH format, as ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read them.

The SuperLink gets ``ca.crt``, ``server.pem`` and ``server.key``; every SuperNode and the
``flwr`` CLI get ``ca.crt`` (to verify the server) and a SuperNode its own ``node-<k>.key``.
Only the public halves are registered with the SuperLink.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    # Private keys are readable by their owner only; create with that mode, never widen it later.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def check_hosts(hosts: list[str]) -> None:
    """Every host is an IP address or a DNS name (letters, digits, dots, hyphens)."""
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            labels = host.split(".")
            if not host or not all(label and label.replace("-", "").isalnum() for label in labels):
                raise ValueError(f"--host {host!r} is neither an IP address nor a DNS name") from None


def _authority_and_server(hosts: list[str]) -> tuple:
    """A new CA (key, self-signed certificate) and the SuperLink's key and certificate for ``hosts``, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedvssl CA"))
        .issuer_name(_name("fedvssl CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign and crl_sign only
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # TLS clients check the subject alternative names, not the common name.
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert, server_key, server_cert


def make_certificates(out: Path, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS, nodes: int = 2) -> list[Path]:
    """Write the CA, the SuperLink's certificate for ``hosts`` and ``nodes`` SuperNode key pairs into ``out``.

    Refuses to overwrite: an existing file of the same name raises ``FileExistsError``, so
    a deployment's CA is never replaced by accident. Returns the files written.
    """
    hosts = list(hosts)
    check_hosts(hosts)
    if not hosts:
        raise ValueError("give at least one --host")
    if nodes < 0:
        raise ValueError(f"--nodes {nodes} must be 0 or more")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["ca.crt", "ca.key", "server.pem", "server.key"]
    names += [f"node-{k}.{ext}" for k in range(nodes) for ext in ("key", "pub")]
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise FileExistsError(f"{out / taken[0]} exists; give an empty folder as --out")

    ca_key, ca_cert, server_key, server_cert = _authority_and_server(hosts)

    written = []

    def write(name: str, data: bytes, private: bool = False) -> None:
        _write(out / name, data, private)
        written.append(out / name)

    write("ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    write("ca.key", _pem_key(ca_key), private=True)
    write("server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    write("server.key", _pem_key(server_key), private=True)
    for k in range(nodes):
        # Flower accepts NIST curves for SuperNode keys; P-384 is what its guide uses.
        key = ec.generate_private_key(ec.SECP384R1())
        write(
            f"node-{k}.key",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
            private=True,
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        write(f"node-{k}.pub", public + f" fedvssl-node-{k}\n".encode())
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fedvssl.federated.certificates",
        description="Write a CA, the SuperLink's TLS certificate and SuperNode key pairs.",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (files are never overwritten)")
    parser.add_argument(
        "--host",
        action="append",
        help="an address the SuperLink is reached at (repeatable; default: 127.0.0.1 and localhost)",
    )
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to write (default 2)")
    args = parser.parse_args(argv)
    hosts = args.host or list(DEFAULT_HOSTS)
    # The SuperLink's own ServerApp process reaches it over loopback, so keep those names.
    hosts += [h for h in DEFAULT_HOSTS if h not in hosts]
    try:
        for path in make_certificates(args.out, hosts, args.nodes):
            print(path)
    except (ValueError, OSError) as e:
        print(f"fedvssl: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
