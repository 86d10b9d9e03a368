"""SigV4 query-string authentication (run by tests/api_auth.rs): URLs made by botocore's own
presigner (`generate_presigned_url`) are answered while valid; tampered, expired, too-long or
another account's URLs are refused as EC2 refuses them. Prints OK at the end."""
import time
import urllib.error
import urllib.request

from ec2env import *

own = client("OWNER")
other = client("STRANGER")


def fetch(url, method="GET"):
    """(HTTP status, body) of a request to a presigned URL, with no other credentials."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


step("a presigned GET and POST are answered")
url = own.generate_presigned_url("describe_images", Params={"Owners": ["self"]}, ExpiresIn=60, HttpMethod="GET")
check("X-Amz-Signature=" in url and "X-Amz-Expires=60" in url, url)
status, body = fetch(url)
check(status == 200 and AMI in body, f"{status} {body[:300]}")
# botocore signs query-protocol URLs for POST unless told otherwise; an empty POST works.
url_post = own.generate_presigned_url("describe_regions", ExpiresIn=60)
status, body = fetch(url_post, "POST")
check(status == 200 and "<regionName>" in body, f"{status} {body[:300]}")

step("tampered, expired and over-long URLs are refused")
status, body = fetch(url.replace("Owner.1=self", "Owner.1=all"))
check(status == 401 and "AuthFailure" in body, f"tampered: {status} {body[:300]}")
status, body = fetch(url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"))
check(status == 401 and "AuthFailure" in body, f"longer: {status} {body[:300]}")
status, body = fetch(url_post, "GET")
check(status == 401 and "AuthFailure" in body, f"method: {status} {body[:300]}")
short = own.generate_presigned_url("describe_regions", ExpiresIn=1, HttpMethod="GET")
time.sleep(2.5)
status, body = fetch(short)
check(status == 400 and "RequestExpired" in body, f"expired: {status} {body[:300]}")
week = own.generate_presigned_url("describe_regions", ExpiresIn=604800, HttpMethod="GET")
check(fetch(week)[0] == 200, "a week is the longest validity")
status, body = fetch(own.generate_presigned_url("describe_regions", ExpiresIn=604801, HttpMethod="GET"))
check(status == 401 and "AuthFailure" in body, f"over a week: {status} {body[:300]}")
status, body = fetch(url.split("&X-Amz-Signature=")[0])
check(status == 401, f"unsigned: {status} {body[:300]}")

step("a stranger's presigned URL acts as the stranger")
theirs = other.generate_presigned_url("describe_images", Params={"ImageIds": [AMI]}, ExpiresIn=60, HttpMethod="GET")
status, body = fetch(theirs)
check(status == 400 and "InvalidAMIID.NotFound" in body, f"{status} {body[:300]}")
print("OK")
