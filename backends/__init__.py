"""Power control of bare-metal nodes through their BMCs (IPMI, Redfish).

Backends know nothing of Kubernetes or MQTT: they turn power on and off and read it back.
"""
