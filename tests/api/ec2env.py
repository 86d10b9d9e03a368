"""What the API test scripts share: boto3 clients for the accounts the Rust test set up
(tests/api_common/mod.rs passes the endpoint and keys in the environment), fast waiters, and
checks that print what went wrong."""
import os
import sys
import time

import boto3
import botocore.config
from botocore.exceptions import ClientError, WaiterError

ENDPOINT = os.environ["AMIVM_ENDPOINT"]
REGION = os.environ.get("AMIVM_REGION", "us-east-1")
AMI = os.environ.get("AMIVM_AMI", "")
OWNER = os.environ.get("AMIVM_OWNER_ACCOUNT", "")
STRANGER = os.environ.get("AMIVM_STRANGER_ACCOUNT", "")
# No retries: a failing call fails the test at once, with the server's error.
CONFIG = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=120)
# Waiters poll every second (EC2's own waiters wait 15 s between polls).
FAST = {"Delay": 1, "MaxAttempts": 120}


def client(who="OWNER", endpoint=ENDPOINT):
    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=os.environ.get(f"AMIVM_{who}_KEY", "testing"),
        aws_secret_access_key=os.environ.get(f"AMIVM_{who}_SECRET", "testing"),
        config=CONFIG,
    )


def step(msg):
    print(f"--- {msg}", flush=True)


def check(cond, msg):
    if not cond:
        print(f"FAILED: {msg}", flush=True)
        sys.exit(1)


def error_code(fn, *args, **kwargs):
    """The EC2 error code `fn` fails with (None if it succeeds)."""
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def expect_error(code, fn, *args, **kwargs):
    got = error_code(fn, *args, **kwargs)
    check(got == code, f"{fn.__name__} {kwargs}: expected {code}, got {got}")


def wait(ec2, name, **kwargs):
    try:
        ec2.get_waiter(name).wait(WaiterConfig=FAST, **kwargs)
    except WaiterError as e:
        check(False, f"waiter {name} {kwargs}: {e} (last response {e.last_response})")


def state(ec2, iid):
    r = ec2.describe_instances(InstanceIds=[iid])
    return r["Reservations"][0]["Instances"][0]["State"]["Name"]


def console(ec2, iid, want, limit=60):
    """The console output once it contains `want`."""
    t0 = time.time()
    out = ""
    while time.time() - t0 < limit:
        # botocore decodes the base64 of GetConsoleOutput's Output itself.
        out = ec2.get_console_output(InstanceId=iid).get("Output", "")
        if want in out:
            return out
        time.sleep(0.5)
    check(False, f"console of {iid} never showed {want!r}; last: {out[-500:]!r}")
