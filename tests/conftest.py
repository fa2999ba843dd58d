"""Root conftest: pytest only honours ``pytest_plugins`` here, so shared fixture plugins are
registered in this one list."""

pytest_plugins = ["tests.fixtures.databases", "tests.fixtures.kube", "tests.fixtures.saml_idp"]
