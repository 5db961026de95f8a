"""Challenge-op tests: the `covers` marker names the test categories a test exercises (the scorecard
reads it to build each op's test-completeness checklist)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "covers(*categories): test categories this test exercises")
    # The interpreter evaluates log(0), inf - inf... in numpy, which warns; the results are checked.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
