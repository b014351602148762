"""Development tools: the sandbox (a local SuprSend), a private Redis server, the demo.

For tests, the demo and local runs; the delivery path never imports them.
"""
