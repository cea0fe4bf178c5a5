"""The `climb` resource: the active profile and the stores it points at.

Local folders need nothing more. For `s3://` roots the resource carries a dagster-aws
`S3Resource`; its credentials are `dg.EnvVar`s (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`), so Dagster records the variable names in run config, never their values.
Where none of them is set, boto3's default chain (instance profile, IRSA, ECS task role) applies.
"""

import os
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from climb_assets.config import Profile, load_profile, resolve_location
from climb_assets.lib.corpus import CorpusOptions
from climb_assets.lib.layout import upgrade_layout
from climb_assets.lib.storage import Store, local_file

S3_ENV = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "endpoint_url": "AWS_ENDPOINT_URL",
    "region_name": "AWS_REGION",
}
"""S3Resource fields filled from these environment variables when they are set."""
_LAYOUT_CHECKED: set[str] = set()
"""Output roots whose layout this process has checked (`upgrade_layout`)."""


def default_profile_ref() -> str:
    """The profile named by CLIMB_CONFIG (a path) or CLIMB_PROFILE (a name), else `demo`."""
    return os.environ.get("CLIMB_CONFIG") or os.environ.get("CLIMB_PROFILE") or "demo"


def uses_s3(profile: Profile) -> bool:
    """Whether the profile reads or writes anything under `s3://`."""
    locations = [profile.storage.root, profile.corpus.path, *(t.path for t in profile.targets)]
    return any(str(loc).startswith("s3://") for loc in locations)


def s3_resource(profile: Profile) -> S3Resource | None:
    """The dagster-aws S3 resource for a profile that uses S3 (None otherwise).

    Credentials, endpoint and region are `dg.EnvVar`s for whichever of `S3_ENV` are set; the
    profile's non-secret `storage.endpoint_url` / `storage.region` take precedence.
    """
    if not uses_s3(profile):
        return None
    fields: dict[str, Any] = {f: dg.EnvVar(var) for f, var in S3_ENV.items() if os.environ.get(var)}
    if "region_name" not in fields and os.environ.get("AWS_DEFAULT_REGION"):
        fields["region_name"] = dg.EnvVar("AWS_DEFAULT_REGION")
    if profile.storage.endpoint_url:
        fields["endpoint_url"] = profile.storage.endpoint_url
    if profile.storage.region:
        fields["region_name"] = profile.storage.region
    return S3Resource(**fields)


def climb_resource(profile_ref: str) -> "ClimbResource":
    """The resource for a profile, with an S3 resource when the profile uses S3."""
    return ClimbResource(profile=profile_ref, s3=s3_resource(load_profile(profile_ref)))


def _value(value: Any) -> Any:
    """A config value, resolving an `EnvVar` when used outside a run (CLI, sensors, tests)."""
    return value.get_value() if isinstance(value, dg.EnvVar) else value


class ClimbResource(dg.ConfigurableResource):
    """Loads the profile and opens its storage root and corpus as stores."""

    profile: str = "demo"
    """A shipped profile name or a path to a YAML profile."""

    s3: S3Resource | None = None
    """S3 client settings for `s3://` locations; None: boto3 / s3fs defaults from the env."""

    def settings(self) -> Profile:
        return load_profile(self.profile)

    def storage_options(self, location: str) -> dict[str, Any]:
        """fsspec options for `location`: the S3 resource's settings as s3fs arguments."""
        if not location.startswith("s3://") or self.s3 is None:
            return {}
        s3 = self.s3
        options: dict[str, Any] = {}
        for field, key in (
            ("aws_access_key_id", "key"),
            ("aws_secret_access_key", "secret"),
            ("aws_session_token", "token"),
            ("endpoint_url", "endpoint_url"),
        ):
            value = _value(getattr(s3, field))
            if value:
                options[key] = value
        region = _value(s3.region_name)
        if region:
            options["client_kwargs"] = {"region_name": region}
        if s3.profile_name:
            options["profile"] = s3.profile_name
        return options

    def open_store(self, location: str) -> Store:
        """A store for any location of the profile (a local path or a URL)."""
        location = resolve_location(location)
        cache = resolve_location(self.settings().storage.cache)
        return Store(location, self.storage_options(location), cache)

    def store(self) -> Store:
        """The output store, its file names upgraded to today's layout (checked once a process)."""
        store = self.open_store(self.settings().storage.root)
        if store.url not in _LAYOUT_CHECKED:
            upgrade_layout(store)
            _LAYOUT_CHECKED.add(store.url)
        return store

    def corpus_store(self) -> Store:
        return self.open_store(self.settings().corpus.path)

    def fetch(self, location: str) -> str:
        """A local path for a file named by a URL (downloaded into the cache); others unchanged."""
        if "://" not in location:
            return location
        cache = resolve_location(self.settings().storage.cache)
        return str(local_file(location, self.storage_options(location), cache))

    def s3_client(self, max_attempts: int | None = None) -> Any:
        """A boto3 S3 client from the dagster-aws resource (or its defaults)."""
        s3 = self.s3 or S3Resource()
        fields = {f: _value(getattr(s3, f)) for f in S3Resource.model_fields}
        if max_attempts is not None:
            fields["max_attempts"] = max_attempts
        return S3Resource(**fields).get_client()

    def has_s3_credentials(self) -> bool:
        """Whether boto3 finds credentials: explicit keys, AWS_* variables, a profile or a role."""
        import boto3

        s3 = self.s3 or S3Resource()
        if _value(s3.aws_access_key_id) or s3.use_unsigned_session:
            return True
        return boto3.session.Session(profile_name=s3.profile_name).get_credentials() is not None

    def check_bucket(self, location: str) -> None:
        """Fails early, naming the fix, when an `s3://` location's bucket cannot be reached."""
        if not location.startswith("s3://"):
            return
        bucket = location[len("s3://") :].split("/", 1)[0]
        if not self.has_s3_credentials():
            raise RuntimeError(
                f"no AWS credentials for {location}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL or storage.endpoint_url for an "
                "S3-compatible server), or run where an instance or task role provides them"
            )
        try:
            self.s3_client(max_attempts=1).head_bucket(Bucket=bucket)
        except Exception as exc:  # botocore raises several unrelated types here
            raise RuntimeError(
                f"cannot reach bucket '{bucket}' of {location} ({type(exc).__name__}: {exc}); "
                "create the bucket or fix the location, and check AWS_ENDPOINT_URL (or "
                "storage.endpoint_url), AWS_REGION and the credentials in the environment"
            ) from None

    def corpus_options(self) -> CorpusOptions:
        c = self.settings().corpus
        return CorpusOptions(
            text_column=c.text_column,
            id_column=c.id_column,
            extra_columns=c.extra_columns,
            min_chars=c.min_chars,
            on_duplicate_id=c.on_duplicate_id,
            max_chars=c.max_chars,
            long_documents=c.long_documents,
        )
