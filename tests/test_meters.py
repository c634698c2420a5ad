"""Every meter family dsmr-ts reads: a telegram of each (written here from the public
specifications, values worked out by hand) through v1 and through the reader on a socket, and
Luxembourg's encrypted Smarty frames, built here with the `cryptography` package from a known
plaintext, key and system title (the test does not trust the code under test to encrypt)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import urllib.parse
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from falcon import testing
from helpers import REPO, TEST_KEY, FakeSer2net, dsmr_ts_command, stored_reading, wait_for

from dsmr_ts.app import create_app
from dsmr_ts.config import load_config
from dsmr_ts.influx.bootstrap import bootstrap
from dsmr_ts.influx.server import ManagedInfluxd, free_port
from dsmr_ts.influx.store import Store
from dsmr_ts.reader.dlms import DecryptionError, EncryptedFramer, decrypt
from dsmr_ts.reader.service import serial_settings
from dsmr_ts.telegram import crc16_arc, parse_telegram

UTC = dt.timezone.utc
KEY = {"X-AUTHKEY": TEST_KEY}
FORM = {**KEY, "Content-Type": "application/x-www-form-urlencoded"}


def with_crc(lines: list[str]) -> str:
    body = "\r\n".join(lines) + "\r\n!"
    return f"{body}{crc16_arc(body.encode('latin-1')):04X}\r\n"


def hex_id(text: str) -> str:
    return text.encode().hex().upper()


@dataclass(frozen=True)
class Family:
    preset: str  # reader.dsmr_version
    telegram: str
    meter: str
    timestamp: dt.datetime
    expected: dict  # stored fields (kWh, kW, V, A)


FAMILIES = {
    # Luxembourg, Sagemcom T210-D: Wh and W (5017120 Wh = 5017.120 kWh), summer time (S: UTC+2).
    "smarty": Family(
        "smarty",
        with_crc(
            [
                "/SAG5\\253TS1234_A",
                "",
                "1-3:0.2.8(50)",
                "0-0:1.0.0(240611093015S)",
                f"0-0:42.0.0({hex_id('SAG-LU-0001')})",
                "1-0:1.8.0(006545766*Wh)",
                "1-0:1.8.1(005017120*Wh)",
                "1-0:1.8.2(001528646*Wh)",
                "1-0:1.7.0(000000286*W)",
                "1-0:2.8.0(000000058*Wh)",
                "1-0:2.8.1(000000000*Wh)",
                "1-0:2.8.2(000000058*Wh)",
                "1-0:2.7.0(000000000*W)",
                "1-0:3.8.0(000000747*varh)",
                "1-0:4.7.0(000000166*var)",
            ]
        ),
        "SAG-LU-0001",
        dt.datetime(2024, 6, 11, 7, 30, 15, tzinfo=UTC),
        {
            "electricity_delivered_1": 5017.12,
            "electricity_delivered_2": 1528.646,
            "electricity_returned_1": 0.0,
            "electricity_returned_2": 0.058,
            "electricity_currently_delivered": 0.286,
            "electricity_currently_returned": 0.0,
        },
    ),
    # Ireland, Iskra AM550 (ESB): no CRC, the COSEM device name as id, no gas.
    "iskra_ie": Family(
        "iskra_ie",
        "\r\n".join(
            [
                "/ISk5\\2MIE5T-200",
                "",
                "1-0:0.0.0(IE0012345678)",
                "0-0:96.1.0(09610)",
                "0-0:1.0.0(240202132747W)",
                "1-0:1.8.1(001234.567*kWh)",
                "1-0:1.8.2(000765.432*kWh)",
                "1-0:2.8.1(000010.001*kWh)",
                "1-0:2.8.2(000020.002*kWh)",
                "0-0:96.14.0(0002)",
                "1-0:1.7.0(00.512*kW)",
                "1-0:2.7.0(00.000*kW)",
                "1-0:21.7.0(00.512*kW)",
                "1-0:32.7.0(236.1*V)",
                "1-0:31.7.0(002*A)",
                "0-0:96.3.10(1)",
                "0-0:96.13.0()",
                "0-1:96.1.1()",
                "!",
            ]
        )
        + "\r\n",
        "IE0012345678",
        dt.datetime(2024, 2, 2, 12, 27, 47, tzinfo=UTC),
        {
            "electricity_delivered_1": 1234.567,
            "electricity_delivered_2": 765.432,
            "electricity_returned_1": 10.001,
            "electricity_returned_2": 20.002,
            "electricity_currently_delivered": 0.512,
            "phase_voltage_l1": 236.1,
            "phase_power_current_l1": 2,
        },
    ),
    # Hungary, E.ON (Sagemcom, DSMR 5 based): four tariff registers; 3 and 4 add to 1 and 2
    # (1.8.1 100.000 + 1.8.3 1.500 = 101.500; 1.8.2 200.000 + 1.8.4 2.250 = 202.250; = 1.8.0 303.750).
    "eon_hu": Family(
        "eon_hu",
        with_crc(
            [
                "/SAG5SAG-METER",
                "",
                "0-0:1.0.0(240724150730S)",
                f"0-0:42.0.0({hex_id('SAG3082200002160')})",
                "0-0:96.14.0(0001)",
                "0-0:96.3.10(1)",
                "0-0:17.0.0(90.000*kW)",
                "1-0:1.8.0(000303.750*kWh)",
                "1-0:1.8.1(000100.000*kWh)",
                "1-0:1.8.2(000200.000*kWh)",
                "1-0:1.8.3(000001.500*kWh)",
                "1-0:1.8.4(000002.250*kWh)",
                "1-0:2.8.0(000040.000*kWh)",
                "1-0:2.8.1(000030.000*kWh)",
                "1-0:2.8.2(000010.000*kWh)",
                "1-0:2.8.3(000000.000*kWh)",
                "1-0:2.8.4(000000.000*kWh)",
                "1-0:32.7.0(240.4*V)",
                "1-0:52.7.0(239.1*V)",
                "1-0:72.7.0(241.2*V)",
                "1-0:31.7.0(003*A)",
                "1-0:13.7.0(0.956)",
                "1-0:14.7.0(50.00*Hz)",
                "1-0:1.7.0(01.250*kW)",
                "1-0:2.7.0(00.000*kW)",
                "0-0:96.13.0()",
            ]
        ),
        "SAG3082200002160",
        dt.datetime(2024, 7, 24, 13, 7, 30, tzinfo=UTC),
        {
            "electricity_delivered_1": 101.5,
            "electricity_delivered_2": 202.25,
            "electricity_returned_1": 30.0,
            "electricity_returned_2": 10.0,
            "electricity_currently_delivered": 1.25,
            "phase_voltage_l3": 241.2,
            "phase_power_current_l1": 3,
        },
    ),
    # Sweden (HAN, branschrekommendation): single registers 1.8.0/2.8.0 as tariff 1, no id.
    "sweden": Family(
        "sweden",
        with_crc(
            [
                "/ELL5\\253833635_A",
                "",
                "0-0:1.0.0(240115101500W)",
                "1-0:1.8.0(00006678.394*kWh)",
                "1-0:2.8.0(00000000.000*kWh)",
                "1-0:3.8.0(00000021.988*kvarh)",
                "1-0:1.7.0(0001.727*kW)",
                "1-0:2.7.0(0000.000*kW)",
                "1-0:21.7.0(0001.023*kW)",
                "1-0:41.7.0(0000.350*kW)",
                "1-0:61.7.0(0000.354*kW)",
                "1-0:32.7.0(240.3*V)",
                "1-0:52.7.0(240.1*V)",
                "1-0:72.7.0(241.3*V)",
                "1-0:31.7.0(004.2*A)",
                "1-0:51.7.0(001.6*A)",
                "1-0:71.7.0(001.7*A)",
            ]
        ),
        "default",
        dt.datetime(2024, 1, 15, 9, 15, tzinfo=UTC),
        {
            "electricity_delivered_1": 6678.394,
            "electricity_delivered_2": 0.0,
            "electricity_returned_1": 0.0,
            "electricity_currently_delivered": 1.727,
            "phase_currently_delivered_l2": 0.35,
            "phase_power_current_l1": 4,
        },
    ),
    # Germany, EasyMeter Q3D: '*255' after the codes, W, 1.8.0/2.8.0, no CRC, no timestamp (now),
    # and what the meter sends after the '!' line is no part of the telegram.
    "q3d": Family(
        "q3d",
        "\r\n".join(
            [
                "/ESY5Q3DB1024 V3.04",
                "",
                "1-0:0.0.0*255(1ESY1313002565)",
                "1-0:1.8.0*255(00052185.7825309*kWh)",
                "1-0:2.8.0*255(00019949.3221493*kWh)",
                "1-0:21.7.0*255(000747.85*W)",
                "1-0:41.7.0*255(000737.28*W)",
                "1-0:61.7.0*255(000639.73*W)",
                "1-0:1.7.0*255(002124.86*W)",
                "1-0:96.5.5*255(80)",
                "0-0:96.1.255*255(1ESY1313002565)",
                "!",
                "  25803103",
                "",
            ]
        ),
        "1ESY1313002565",
        None,
        {
            "electricity_delivered_1": 52185.7825309,
            "electricity_returned_1": 19949.3221493,
            "electricity_currently_delivered": 2.12486,
            "phase_currently_delivered_l1": 0.74785,
        },
    ),
}


def check_stored(store: Store, family: Family, moment: dt.datetime) -> None:
    stored = stored_reading(store, family.meter, moment)
    for name, value in family.expected.items():
        assert stored.get(name) == pytest.approx(value, abs=1e-9), name


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_through_v1(name, config, session_config):
    family = FAMILIES[name]
    store = Store(session_config.influxdb)
    try:
        client = testing.TestClient(create_app(config, store))
        before = dt.datetime.now(UTC).replace(microsecond=0)
        response = client.simulate_post(
            "/api/v1/datalogger/dsmrreading",
            headers=FORM,
            body=urllib.parse.urlencode({"telegram": family.telegram}, encoding="latin-1"),
        )
        assert response.status_code == 201, response.text
        # Without a P1 timestamp (Q3D) a reading is stamped with the time it arrived.
        moment = family.timestamp or _stored_time_since(store, family.meter, before)
        assert parse_telegram(family.telegram).reading.meter == family.meter
        check_stored(store, family, moment)
    finally:
        store.close()


def _stored_time_since(store: Store, meter: str, since: dt.datetime) -> dt.datetime:
    row = store.readings.latest(meter, after=since - dt.timedelta(seconds=1))
    assert row is not None, f"nothing stored for {meter}"
    return row["_time"]


def test_every_family_has_a_preset():
    config = load_config(REPO / "config" / "dsmr-ts.example.yaml", create=False)
    for family in FAMILIES.values():
        config.reader.dsmr_version = family.preset
        assert serial_settings(config)["baudrate"] in (9600, 115200)
    config.reader.dsmr_version = "smarty"
    assert serial_settings(config)["xonxoff"] is False  # binary frames: no flow-control bytes taken out


# --- the reader on a socket -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reader_stack(influxd_binary, tmp_path_factory):
    """A private influxd and two readers on fake ser2net ports: one plaintext, one with the
    Smarty decryption key."""
    folder = tmp_path_factory.mktemp("meters")
    influxd = ManagedInfluxd(influxd_binary, folder / "influxd", port=free_port()).start()
    plain, encrypted = FakeSer2net(), FakeSer2net()
    readers = {}
    base = f"influxdb:\n  managed: false\n  url: {influxd.url}\n"
    (folder / "plain.yaml").write_text(base)
    bootstrap(load_config(folder / "plain.yaml"))  # writes the tokens into the file
    influx_section = (folder / "plain.yaml").read_text()
    for name, ser2net, extra in (
        ("plain", plain, ""),
        (
            "encrypted",
            encrypted,
            f"  dsmr_version: smarty\n  decryption_key: {SMARTY_KEY}\n  authentication_key: {SMARTY_AUTH}\n",
        ),
    ):
        path = folder / f"{name}.yaml"
        path.write_text(influx_section + f"reader:\n  port: {ser2net.url}\n  spool_dir: ./spool-{name}\n{extra}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSMR_TS_")}
        log = folder / f"{name}.log"
        readers[name] = (
            subprocess.Popen(
                dsmr_ts_command("reader", "--config", str(path)),
                cwd=REPO,
                env=env,
                stdout=open(log, "w"),
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    store = Store(load_config(folder / "plain.yaml").influxdb)
    yield {"plain": plain, "encrypted": encrypted, "store": store, "logs": {k: v[1] for k, v in readers.items()}}
    for process, _ in readers.values():
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    for log in (folder / "plain.log", folder / "encrypted.log"):
        text = log.read_text()
        assert SMARTY_KEY not in text and SMARTY_KEY.lower() not in text and SMARTY_AUTH not in text
    store.close()
    plain.close()
    encrypted.close()
    influxd.stop()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_through_the_reader(name, reader_stack):
    family = FAMILIES[name]
    store = reader_stack["store"]
    before = dt.datetime.now(UTC).replace(microsecond=0)
    data = family.telegram.encode("latin-1")
    reader_stack["plain"].send(b"\x00noise" + data[:40])  # split across reads, noise in front
    reader_stack["plain"].send(data[40:])
    moment = family.timestamp
    if moment is None:
        moment = wait_for(
            lambda: (store.readings.latest(family.meter, after=before - dt.timedelta(seconds=1)) or {}).get("_time"),
            what=f"the {name} reading",
        )
    wait_for(lambda: stored_reading(store, family.meter, moment), what=f"the {name} reading from the reader")
    check_stored(store, family, moment)


# --- Luxembourg's encrypted frames ------------------------------------------------------------------

SMARTY_KEY = "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
SMARTY_AUTH = "ABCDEF0123456789ABCDEF0123456789"
SYSTEM_TITLE = bytes.fromhex("5341471234567890")  # "SAG" + the meter's serial


def encrypt_frame(plaintext: bytes, key: str, auth_key: str, counter: int, system_title: bytes = SYSTEM_TITLE) -> bytes:
    """A general-global-cipher frame as a Smarty meter sends it (DLMS Green Book layout)."""
    security_control = 0x30
    iv = system_title + counter.to_bytes(4, "big")
    encryptor = Cipher(algorithms.AES(bytes.fromhex(key)), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(bytes([security_control]) + bytes.fromhex(auth_key))
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    content = bytes([security_control]) + counter.to_bytes(4, "big") + ciphertext + encryptor.tag[:12]
    length = bytes([len(content)]) if len(content) < 0x80 else b"\x82" + len(content).to_bytes(2, "big")
    return b"\xdb\x08" + system_title + length + content


def smarty_plaintext(moment: dt.datetime, d1_wh: int) -> bytes:
    local = moment.astimezone(dt.timezone(dt.timedelta(hours=1)))  # winter: W
    return with_crc(
        [
            "/SAG5\\253TS1234_A",
            "",
            "1-3:0.2.8(50)",
            f"0-0:1.0.0({local:%y%m%d%H%M%S}W)",
            f"0-0:42.0.0({hex_id('SAG-LU-CRYPT')})",
            f"1-0:1.8.1({d1_wh:09d}*Wh)",
            "1-0:1.8.2(000100000*Wh)",
            "1-0:1.7.0(000001234*W)",
            "1-0:2.8.1(000000000*Wh)",
            "1-0:2.8.2(000000000*Wh)",
            "1-0:2.7.0(000000000*W)",
        ]
    ).encode("latin-1")


def test_decrypt_round_trip_and_refusals():
    plaintext = smarty_plaintext(dt.datetime(2024, 1, 10, 12, 0, tzinfo=UTC), 5017120)
    frame = encrypt_frame(plaintext, SMARTY_KEY, SMARTY_AUTH, counter=7)
    assert frame[0] == 0xDB and frame[10:11] == b"\x82"  # longer than 127 bytes: two length bytes
    assert decrypt(frame, bytes.fromhex(SMARTY_KEY), bytes.fromhex(SMARTY_AUTH)) == plaintext
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt(frame, bytes.fromhex("00" * 16), bytes.fromhex(SMARTY_AUTH))  # wrong key
    damaged = bytearray(frame)
    damaged[40] ^= 0x01
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt(bytes(damaged), bytes.fromhex(SMARTY_KEY), bytes.fromhex(SMARTY_AUTH))
    with pytest.raises(DecryptionError, match="cut short"):
        decrypt(frame[:-20], bytes.fromhex(SMARTY_KEY), bytes.fromhex(SMARTY_AUTH))
    # The spec's authentication key when the operator gives none.
    default = encrypt_frame(plaintext, SMARTY_KEY, "00112233445566778899AABBCCDDEEFF", counter=8)
    assert decrypt(default, bytes.fromhex(SMARTY_KEY)) == plaintext


def test_encrypted_frames_split_anywhere_are_cut_whole():
    frames = [
        encrypt_frame(
            smarty_plaintext(dt.datetime(2024, 1, 10, 12, 0, i, tzinfo=UTC), 5017120 + i),
            SMARTY_KEY,
            SMARTY_AUTH,
            counter=i,
        )
        for i in range(3)
    ]
    stream = b"\x00\xdb\x07noise" + frames[0] + frames[1] + frames[2]
    framer = EncryptedFramer()
    found = []
    for start in range(0, len(stream), 37):  # reads of 37 bytes
        found += framer.feed(stream[start : start + 37])
    assert found == frames


def test_the_reader_decrypts_smarty_and_survives_a_wrong_key(reader_stack):
    store, ser2net, log = reader_stack["store"], reader_stack["encrypted"], reader_stack["logs"]["encrypted"]
    moment = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    good = encrypt_frame(smarty_plaintext(moment, 5017120), SMARTY_KEY, SMARTY_AUTH, counter=100)
    ser2net.send(good[:50])
    ser2net.send(good[50:])  # a frame split across reads
    wait_for(lambda: stored_reading(store, "SAG-LU-CRYPT", moment), what="the decrypted reading")
    stored = stored_reading(store, "SAG-LU-CRYPT", moment)
    assert stored["electricity_delivered_1"] == 5017.12 and stored["electricity_currently_delivered"] == 1.234
    rejected_before = store.meters.rejected_count()
    wrong = [
        encrypt_frame(
            smarty_plaintext(moment + dt.timedelta(seconds=i), 5017200), "11" * 16, SMARTY_AUTH, counter=101 + i
        )
        for i in range(1, 4)
    ]
    ser2net.send(b"".join(wrong))
    wait_for(lambda: store.meters.rejected_count() >= rejected_before + 3, what="three rejected frames counted")
    text = log.read_text()
    assert text.count("cannot decrypt a telegram from the meter") == 1, text  # one line, not one per frame
    assert "wrong decryption or authentication key" in text
    later = moment + dt.timedelta(seconds=30)
    ser2net.send(encrypt_frame(smarty_plaintext(later, 5017300), SMARTY_KEY, SMARTY_AUTH, counter=200))
    wait_for(lambda: stored_reading(store, "SAG-LU-CRYPT", later), what="a good frame after the bad ones")
    assert "telegrams decrypt again (after 3 that did not)" in log.read_text()
