"""The forwarding wing: requests to a plugin, relayed through hecated's one socket.

Everything about forwarding lives here, each in one module:

- ``settings``: the forwarded prefix (spelled once) and the wing's bounds;
- ``edge``: the serving layer's ``Detour`` (``hecated.http.hooks``): which
  requests are forwarded, decided once on the path the router sees, the stream
  cap (``503 busy`` decided there), the stream threads and the hang-up watch;
- ``threads``: the reusable stream threads and the epoll watch for hang-ups;
- ``relay``: one request relayed to the plugin's socket and its answer streamed;
- ``pool``: the one connect to a plugin's socket, and kept-alive connections;
- ``wire``: HTTP/1.1 on that socket: the request's head out, the answer read by hand;
- ``headers``: which headers cross, each way;
- ``errors``: what can go wrong, each with its code;
- ``ondemand``: a plugin that is not running started for a forwarded request (one
  start per plugin, the requests held on the index's change feed until it answers);
- ``idlestop``: a plugin's unit stopped after ``idle_stop_after`` seconds unused.

The wing never talks to systemd: the daemon injects the starter and the stopper
(over ``adapters/unitcontrol``), and asks ``IdleStops.pending`` before an idle exit.

The daemon's start-up loads ``settings``, ``edge`` and ``threads`` only; the relay
comes with the full app, off the cold-start path. A forwarded request reaches the
relay without Werkzeug's request or routing (``HecateApp.forwarded``).
"""
