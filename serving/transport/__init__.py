"""How the gateway reaches an engine: one `Transport` per deployment (serving/transport/base.py).

`http.HttpTransport` sends to the local vLLM engine (and tenants' own engines) over httpx;
`ray.RayTransport` sends to the Ray Serve engine deployment through its handle. Admission, the
ticket, relaying and finishing are serving/forwarding.py's, the same for both. The Ray transport is
imported by name only where Ray runs (it is an optional extra).
"""
