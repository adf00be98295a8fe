"""The built-in simulator served over real device protocols, for tests and demos.

`SimulatedDevice` turns a `RelaySimulator` into what a relay publishes (values with their
quality, the openings counter, the device clock, its identity) and carries the switchable
bad-device behaviours; `ModbusDeviceServer`, `MmsDeviceServer` and `Dnp3DeviceServer` serve
it over Modbus TCP, IEC 61850 MMS and DNP3 with the real protocol libraries.
"""
