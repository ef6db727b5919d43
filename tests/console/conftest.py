from tests.scheduling.conftest import sandbox  # noqa: F401 -- the fixture, for the daemon tests here
