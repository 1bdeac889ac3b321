"""The answering service: HTTP API, champion hot-swap, feedback, chat page."""
