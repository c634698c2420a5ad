"""An emulated DSMR 5 meter: valid telegrams (CRC), meter positions that only go up, a household's
power, solar return around noon, a gas value every 5 minutes, and (water=True) a water meter on
M-Bus channel 2 reporting every 5 minutes too."""

from __future__ import annotations

import datetime as dt
import math
import random
from typing import Iterator

from dsmr_ts.telegram import METER_TZ, SIMULATED_METER, Reading, Value, build_telegram


class MeterSimulator:
    def __init__(self, meter: str = SIMULATED_METER, seed: int | None = None, water: bool = False):
        self.meter = meter
        self.random = random.Random(seed)
        self.positions = {
            "electricity_delivered_1": 1234.567,
            "electricity_delivered_2": 2345.678,
            "electricity_returned_1": 12.345,
            "electricity_returned_2": 23.456,
        }
        self.gas = 987.654
        self.gas_flow = 0.1
        self.gas_time: dt.datetime | None = None
        self.water = 123.456 if water else None  # m3
        self.last: dt.datetime | None = None

    def reading(self, moment: dt.datetime) -> Reading:
        """The meter's state at `moment` (whole seconds, UTC); positions advance since the last call."""
        moment = moment.replace(microsecond=0)
        seconds = (moment - self.last).total_seconds() if self.last else 0.0
        self.last = moment
        local = moment.astimezone(METER_TZ)
        hour = local.hour + local.minute / 60
        usage = 0.25 + 0.35 * math.sin(math.pi * max(0.0, hour - 6) / 17) + self.random.uniform(0, 0.4)
        solar = max(0.0, 2.5 * math.sin(math.pi * (hour - 7) / 12)) if 7 <= hour <= 19 else 0.0
        delivered, returned = max(usage - solar, 0.0), max(solar - usage, 0.0)
        tariff = 1 if self.low_tariff(moment) else 2
        self.positions[f"electricity_delivered_{tariff}"] += delivered * seconds / 3600
        self.positions[f"electricity_returned_{tariff}"] += returned * seconds / 3600
        self.gas_flow = 0.05 + (0.4 if hour < 9 or hour > 17 else 0.1) * self.random.random()  # m3/h
        voltage = 229.0 + self.random.uniform(0, 3)
        values: dict[str, Value] = {
            **{k: round(v, 3) for k, v in self.positions.items()},
            "electricity_currently_delivered": round(delivered, 3),
            "electricity_currently_returned": round(returned, 3),
            "phase_currently_delivered_l1": round(delivered, 3),
            "phase_currently_returned_l1": round(returned, 3),
            "phase_voltage_l1": round(voltage, 1),
            "phase_power_current_l1": int(max(delivered, returned) * 1000 / voltage),
        }
        # The gas meter reports every 5 minutes; between reports the telegram repeats the last one.
        gas_time = moment - dt.timedelta(minutes=moment.minute % 5, seconds=moment.second)
        if gas_time != self.gas_time:
            if self.gas_time is not None:
                hours = (gas_time - self.gas_time).total_seconds() / 3600
                self.gas += self.gas_flow * hours
                if self.water is not None:  # m3/h: mornings and evenings use most
                    self.water += (0.3 if 6 <= hour < 9 or 18 <= hour < 22 else 0.02) * self.random.random() * hours
            self.gas_time = gas_time
        values.update(extra_device_timestamp=gas_time, extra_device_delivered=round(self.gas, 3))
        if self.water is not None:  # reported with the gas, on M-Bus channel 2
            values.update(water_timestamp=gas_time, water_delivered=round(self.water, 3))
        return Reading(timestamp=moment, meter=self.meter, values=values)

    def telegram(self, moment: dt.datetime) -> str:
        tariff = 1 if self.low_tariff(moment) else 2
        return build_telegram(self.reading(moment), {"electricity_tariff": tariff})

    @staticmethod
    def low_tariff(moment: dt.datetime) -> bool:
        """Tariff 1 (low) at night and at weekends, as in the Netherlands."""
        local = moment.astimezone(METER_TZ)
        return local.weekday() >= 5 or local.hour < 7 or local.hour >= 23

    def telegrams(self, start: dt.datetime, step: dt.timedelta, count: int | None = None) -> Iterator[str]:
        moment = start
        produced = 0
        while count is None or produced < count:
            yield self.telegram(moment)
            moment += step
            produced += 1
