"""Authentication and authorisation against `amivm serve`: requests signed by botocore's own
SigV4 signer, then spoiled one way each, sent raw; and a stranger's keys against the owner's
private image and instance."""
import datetime
import os
import re
from unittest import mock

import botocore.auth
import requests
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ec2env import *

BODY = "Action=DescribeImages&Version=2016-11-15&Owner.1=self"
owner_creds = Credentials(os.environ["AMIVM_OWNER_KEY"], os.environ["AMIVM_OWNER_SECRET"])


def send(creds=owner_creds, region=REGION, service="ec2", body=BODY, when=None, tamper=None, sign=True):
    req = AWSRequest(method="POST", url=ENDPOINT + "/", data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    if sign:
        signer = botocore.auth.SigV4Auth(creds, service, region)
        if when is None:
            signer.add_auth(req)
        else:
            with mock.patch("botocore.auth.get_current_datetime", return_value=when):
                signer.add_auth(req)
    prepared = req.prepare()
    data = prepared.body
    if isinstance(data, str):
        data = data.encode()
    if tamper:
        data = tamper(data)
    r = requests.post(ENDPOINT + "/", data=data, headers=dict(prepared.headers), timeout=30)
    code = re.search(r"<Code>([^<]*)</Code>", r.text)
    return r.status_code, code.group(1) if code else None, r.text


def expect(what, got, status, code):
    check(got[0] == status and got[1] == code, f"{what}: expected {status} {code}, got {got[0]} {got[1]}: {got[2][:300]}")


step("a correctly signed request is answered")
got = send()
check(got[0] == 200 and AMI in got[2], f"signed request: {got}")

step("spoiled signatures")
expect("no signature", send(sign=False), 401, "AuthFailure")
expect("wrong secret", send(creds=Credentials(owner_creds.access_key, "x" * 40)), 401, "AuthFailure")
expect("unknown key", send(creds=Credentials("AKIAAAAAAAAAAAAAAAAA", owner_creds.secret_key)), 401, "AuthFailure")
expect("wrong region in scope", send(region="eu-west-1"), 401, "AuthFailure")
expect("wrong service in scope", send(service="s3"), 401, "AuthFailure")
old = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=16)
# EC2 answers a request signed more than 15 minutes ago with RequestExpired (its error-code list).
expect("expired date", send(when=old), 400, "RequestExpired")
future = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(minutes=16)
expect("date in the future", send(when=future), 400, "RequestExpired")
recent = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=10)
check(send(when=recent)[0] == 200, "a request signed 10 minutes ago is within the allowed skew")
expect("tampered body", send(tamper=lambda b: b.replace(b"Owner.1=self", b"Owner.1=all!")), 401, "AuthFailure")
expect("tampered action", send(tamper=lambda b: b.replace(b"DescribeImages", b"DescribeRegions")), 401, "AuthFailure")

step("a stranger's keys")
own, other = client("OWNER"), client("STRANGER")
r = own.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, UserData="exit=halt")
iid = r["Instances"][0]["InstanceId"]
check(other.describe_images()["Images"] == [], "stranger lists no images")
check(other.describe_images(Owners=[OWNER])["Images"] == [], "stranger lists none of the owner's")
expect_error("InvalidAMIID.NotFound", other.describe_images, ImageIds=[AMI])
expect_error("InvalidAMIID.NotFound", other.run_instances, ImageId=AMI, MinCount=1, MaxCount=1)
expect_error("InvalidAMIID.NotFound", other.modify_image_attribute, ImageId=AMI, LaunchPermission={"Add": [{"Group": "all"}]})
expect_error("InvalidAMIID.NotFound", other.deregister_image, ImageId=AMI)
expect_error("InvalidAMIID.NotFound", other.create_tags, Resources=[AMI], Tags=[{"Key": "a", "Value": "b"}])
expect_error("InvalidAMIID.NotFound", other.copy_image, SourceImageId=AMI, SourceRegion=REGION, Name="stolen")
mine = [i["InstanceId"] for res in other.describe_instances()["Reservations"] for i in res["Instances"]]
check(iid not in mine, "the stranger lists the owner's instance")
for fn in (other.describe_instances, other.stop_instances, other.terminate_instances, other.start_instances, other.reboot_instances):
    expect_error("InvalidInstanceID.NotFound", fn, InstanceIds=[iid])
expect_error("InvalidInstanceID.NotFound", other.get_console_output, InstanceId=iid)
expect_error("InvalidInstanceID.NotFound", other.create_image, InstanceId=iid, Name="stolen")
check(other.describe_snapshots(OwnerIds=[OWNER])["Snapshots"] == [], "stranger sees no snapshots")
check(all(t["ResourceId"] not in (iid, AMI) for t in other.describe_tags()["Tags"]), "stranger sees the owner's tags")
wait(own, "instance_running", InstanceIds=[iid])
check(state(own, iid) == "running", "the owner's instance is untouched")
own.terminate_instances(InstanceIds=[iid], Force=True)
wait(own, "instance_terminated", InstanceIds=[iid])
check(own.describe_images(ImageIds=[AMI])["Images"][0]["Public"] is False, "the owner's image is untouched")
print("OK")
