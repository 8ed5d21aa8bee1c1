# pytest allows `pytest_plugins` only in the root conftest, so the S3 server fixtures
# are imported here instead.
from tests.s3server import s3_server, s3_storage  # noqa: F401
