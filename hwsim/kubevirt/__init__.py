"""Upstream KubeVirt in hwsim: its CRDs (`crds`), VMs and launcher pods (`objects`), the
virt-controller and virt-handler behaviour that matters to fencing (`controller`), live
migrations and evacuations (`migrations`) and virt-api's admission webhooks (`admission`).

It keeps the same two truths as the Deckhouse controller
(`nodefence.hwsim.virtualization.coldstandby`): what the API says, and where the VMs' processes
really run (`actual`, with the split brains seen).
"""
