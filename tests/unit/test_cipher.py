"""Which TLS 1.3 cipher the receiver chooses, from what /proc/cpuinfo says of its CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanxfer import cipher

# Abridged /proc/cpuinfo of the machines that matter: one line per CPU in real files.
X86_WITH_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 ssse3 aes avx2 sha_ni\n"
X86_WITHOUT_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 ssse3 avx2\n"
PI4_ARM64 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
PI5_ARM64 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
PI4_ARMHF = "processor\t: 0\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva\n"


@pytest.mark.parametrize(
    ("cpuinfo", "has_aes"),
    [
        (X86_WITH_AES, True),
        (X86_WITHOUT_AES, False),
        (PI4_ARM64, False),
        (PI5_ARM64, True),
        (PI4_ARMHF, False),
        ("processor\t: 0\n", None),
        ("", None),
    ],
)
def test_aes_instructions_are_read_from_cpuinfo(cpuinfo: str, has_aes: bool | None) -> None:
    assert cipher.cpu_has_aes(cpuinfo) is has_aes


def test_auto_takes_chacha20_on_a_cpu_without_aes_instructions() -> None:
    choice = cipher.choose("auto", PI4_ARM64)
    assert choice == cipher.Choice("chacha20", "this CPU has no AES instructions")
    assert choice.suite == "TLS_CHACHA20_POLY1305_SHA256"
    assert cipher.openssl_config(choice) is not None


def test_auto_keeps_aes_where_the_cpu_has_it_or_does_not_say() -> None:
    assert cipher.choose("auto", PI5_ARM64) == cipher.Choice("aes", "this CPU has AES instructions")
    unknown = cipher.choose("auto", "")
    assert unknown.cipher == "aes" and cipher.openssl_config(unknown) is None


@pytest.mark.parametrize("setting", ["aes", "chacha20"])
def test_a_setting_overrides_the_cpu(setting: str) -> None:
    for cpuinfo in (PI4_ARM64, PI5_ARM64):
        assert cipher.choose(setting, cpuinfo) == cipher.Choice(setting, f"tls_cipher: {setting}")


def test_the_shipped_openssl_configuration_puts_chacha20_first() -> None:
    path = cipher.openssl_config(cipher.Choice("chacha20", ""))
    assert path is not None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    suites = next(line for line in lines if line.startswith("Ciphersuites = "))
    assert suites.split(" = ")[1].split(":")[0] == "TLS_CHACHA20_POLY1305_SHA256"
    assert "Options = ServerPreference" in lines


@pytest.mark.parametrize(
    ("suite", "said"),
    [
        ("TLS_CHACHA20_POLY1305_SHA256", "ChaCha20-Poly1305"),
        ("TLS_AES_256_GCM_SHA384", "AES-256-GCM"),
        ("TLS_SOMETHING_NEW", "TLS_SOMETHING_NEW"),
    ],
)
def test_suites_are_named_as_people_say_them(suite: str, said: str) -> None:
    assert cipher.describe(suite) == said
