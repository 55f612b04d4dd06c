"""Redfish (the DMTF library), as ironic over sushy: model, transport, client, backend."""
