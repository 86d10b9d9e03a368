"""The same sequence of EC2 calls against any endpoint (amivm serve, or moto's EC2), printing the
shape boto3 parsed for each action as JSON: {action: ["Path.To.Field: type", ...]}. The Rust test
(tests/api_moto.rs) compares the two servers' shapes.

Usage: shapes.py AMI   (AMI: an image the caller may launch; "moto" picks one of moto's)"""
import datetime
import time
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ec2env import *

ec2 = client("OWNER")
ami = sys.argv[1]
if ami == "moto":
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
shapes = {}


def shape(v, path, out):
    if isinstance(v, dict):
        for k, x in v.items():
            if k != "ResponseMetadata":
                shape(x, f"{path}.{k}" if path else k, out)
    elif isinstance(v, list):
        out.add(f"{path}: list")
        for x in v:
            shape(x, f"{path}[]", out)
    else:
        t = {bool: "bool", int: "int", str: "str", datetime.datetime: "datetime"}.get(type(v), type(v).__name__)
        out.add(f"{path}: {t}")


def record(name, response):
    out = set(shapes.get(name, []))
    shape(response, "", out)
    shapes[name] = sorted(out)
    return response


def optional(name, fn, **kwargs):
    """An action a server may not implement (moto lacks some): its failure is recorded."""
    try:
        return record(name, fn(**kwargs))
    except Exception as e:  # botocore's ClientError, or moto's HTML 500 page
        shapes[name] = [f"failed: {type(e).__name__}"]
        return None


def until(iid, want, limit=120):
    """Poll until the instance is `want` (a waiter fails on the states a reboot passes)."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if state(ec2, iid) == want:
            return
        time.sleep(0.5)
    check(False, f"{iid} never became {want}")


record("DescribeRegions", ec2.describe_regions())
record("DescribeAvailabilityZones", ec2.describe_availability_zones())
record("DescribeInstanceTypes", ec2.describe_instance_types(InstanceTypes=["t3.micro"]))
record("DescribeImages", ec2.describe_images(ImageIds=[ami]))
pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
record("CreateKeyPair", ec2.create_key_pair(KeyName="shape-key", KeyType="ed25519", TagSpecifications=[
    {"ResourceType": "key-pair", "Tags": [{"Key": "k", "Value": "v"}]}]))
record("ImportKeyPair", ec2.import_key_pair(KeyName="shape-imported", PublicKeyMaterial=pub))
record("DescribeKeyPairs", ec2.describe_key_pairs(KeyNames=["shape-key", "shape-imported"], IncludePublicKey=True))
record("DeleteKeyPair", ec2.delete_key_pair(KeyName="shape-imported"))
r = record("RunInstances", ec2.run_instances(
    ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData="exit=halt", KeyName="shape-key",
    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "shape"}]}]))
iid = r["Instances"][0]["InstanceId"]
wait(ec2, "instance_running", InstanceIds=[iid])
record("DescribeInstances", ec2.describe_instances(InstanceIds=[iid]))
record("DescribeInstanceStatus", ec2.describe_instance_status(InstanceIds=[iid]))
record("CreateTags", ec2.create_tags(Resources=[iid], Tags=[{"Key": "k", "Value": "v"}]))
record("DescribeTags", ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}]))
record("DeleteTags", ec2.delete_tags(Resources=[iid], Tags=[{"Key": "k"}]))
record("GetConsoleOutput", ec2.get_console_output(InstanceId=iid))
record("StopInstances", ec2.stop_instances(InstanceIds=[iid], Force=True))
wait(ec2, "instance_stopped", InstanceIds=[iid])
new = record("CreateImage", ec2.create_image(InstanceId=iid, Name="shape-image"))["ImageId"]
wait(ec2, "image_available", ImageIds=[new])
record("DescribeImageAttribute", ec2.describe_image_attribute(ImageId=new, Attribute="launchPermission"))
record("ModifyImageAttribute", ec2.modify_image_attribute(ImageId=new, LaunchPermission={"Add": [{"UserId": "222222222222"}]}))
record("DescribeImageAttribute", ec2.describe_image_attribute(ImageId=new, Attribute="launchPermission"))
optional("ResetImageAttribute", ec2.reset_image_attribute, ImageId=new, Attribute="launchPermission")
copy = record("CopyImage", ec2.copy_image(SourceImageId=new, SourceRegion=REGION, Name="shape-copy"))["ImageId"]
record("DescribeSnapshots", ec2.describe_snapshots(OwnerIds=["self"]))
record("StartInstances", ec2.start_instances(InstanceIds=[iid]))
wait(ec2, "instance_running", InstanceIds=[iid])
record("RebootInstances", ec2.reboot_instances(InstanceIds=[iid]))
record("DeregisterImage", ec2.deregister_image(ImageId=copy))
record("TerminateInstances", ec2.terminate_instances(InstanceIds=[iid], Force=True))
until(iid, "terminated")
print(json.dumps(shapes, indent=1, sort_keys=True))
