"""The HTTP service: BentoML service (service.py) mounting the /v1 API (api.py: its routes; its plumbing in
request_context.py, body.py, api_errors.py and openapi.py), the review console (console.py), the review queue
(queue.py), API keys (auth.py), settings (config.py), metrics, JSON logs, a client (client.py) and the
`shenhe serve` / `shenhe review export` commands (cli.py). Depends on ``models`` only; never on torch."""
