# Optional shortcuts; ./run does the work and needs only bash and Python >= 3.10.
.PHONY: demo test lint
demo:
	./run demo
test:
	./run test
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
