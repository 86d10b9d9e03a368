"""The whole life of an AMI and its instances through boto3 against `amivm serve`: the guest
(tests/guest) is the AMI's kernel; UserData `exit=halt` (added to its command line) keeps it
running until it is stopped."""
from ec2env import *

own = client("OWNER")
other = client("STRANGER")

step("describe-images with filters")
r = own.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": ["guest-*"]}])
check([i["ImageId"] for i in r["Images"]] == [AMI], f"name filter: {r['Images']}")
img = r["Images"][0]
check(img["State"] == "available" and img["OwnerId"] == OWNER and img["Public"] is False, img)
check(img["RootDeviceName"] == "/dev/vda" and img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"].startswith("snap-"), img)
check(own.describe_images(Filters=[{"Name": "name", "Values": ["nope-*"]}])["Images"] == [], "no match")
check(len(own.describe_images(Filters=[{"Name": "is-public", "Values": ["false"]}, {"Name": "state", "Values": ["available"]}])["Images"]) == 1, "is-public+state")
check(own.describe_images(Owners=["amazon"])["Images"] == [], "no amazon images here")
check(other.describe_images()["Images"] == [], "a stranger sees no private image")

step("run-instances on t3.micro, instance_running")
r = own.run_instances(ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData="exit=halt",
                      TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]}])
inst = r["Instances"][0]
iid = inst["InstanceId"]
check(inst["State"]["Name"] == "pending" and inst["InstanceType"] == "t3.micro" and inst["ImageId"] == AMI, inst)
check(r["OwnerId"] == OWNER, r)
wait(own, "instance_running", InstanceIds=[iid])
d = own.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["web"]}, {"Name": "instance-state-name", "Values": ["running"]}])
check([i["InstanceId"] for res in d["Reservations"] for i in res["Instances"]] == [iid], d)
check(own.describe_instances(Filters=[{"Name": "instance-type", "Values": ["m5.large"]}])["Reservations"] == [], "type filter")
s = own.describe_instance_status(InstanceIds=[iid])["InstanceStatuses"]
check(s[0]["InstanceState"]["Name"] == "running" and s[0]["InstanceStatus"]["Status"] == "ok", s)

step("get-console-output shows the guest")
out = console(own, iid, "AMIVM-GUEST exit=halt")
check("AMIVM-GUEST boot=linux64" in out and "exit=halt" in out and "cpus_up=2" in out, out[-800:])

step("stop (Force), instance_stopped; start again; stop")
r = own.stop_instances(InstanceIds=[iid], Force=True)
check(r["StoppingInstances"][0]["PreviousState"]["Name"] == "running", r)
wait(own, "instance_stopped", InstanceIds=[iid])
r = own.start_instances(InstanceIds=[iid])
check(r["StartingInstances"][0]["CurrentState"]["Name"] == "pending", r)
wait(own, "instance_running", InstanceIds=[iid])
own.stop_instances(InstanceIds=[iid], Force=True)
wait(own, "instance_stopped", InstanceIds=[iid])

step("create-image, image_available; copy-image")
new = own.create_image(InstanceId=iid, Name="from-api", Description="made by boto3",
                       TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "env", "Value": "test"}]}])["ImageId"]
wait(own, "image_available", ImageIds=[new])
ni = own.describe_images(ImageIds=[new])["Images"][0]
check(ni["Name"] == "from-api" and ni["Description"] == "made by boto3" and ni["Tags"] == [{"Key": "env", "Value": "test"}], ni)
expect_error("InvalidAMIName.Duplicate", own.create_image, InstanceId=iid, Name="from-api")
copy = own.copy_image(SourceImageId=new, SourceRegion=REGION, Name="copied", CopyImageTags=True)["ImageId"]
wait(own, "image_available", ImageIds=[copy])
check(own.describe_images(ImageIds=[copy])["Images"][0]["SourceImageId"] == new, "SourceImageId")

step("share with the second account, which then runs it")
expect_error("InvalidAMIID.NotFound", other.describe_images, ImageIds=[copy])
expect_error("InvalidAMIID.NotFound", other.run_instances, ImageId=copy, MinCount=1, MaxCount=1)
own.modify_image_attribute(ImageId=copy, LaunchPermission={"Add": [{"UserId": STRANGER}]})
lp = own.describe_image_attribute(ImageId=copy, Attribute="launchPermission")["LaunchPermissions"]
check(lp == [{"UserId": STRANGER}], lp)
seen = [i["ImageId"] for i in other.describe_images(ExecutableUsers=["self"])["Images"]]
check(seen == [copy], f"shared image as the stranger sees it: {seen}")
expect_error("AuthFailure", other.modify_image_attribute, ImageId=copy, LaunchPermission={"Add": [{"Group": "all"}]})
expect_error("AuthFailure", other.deregister_image, ImageId=copy)
r2 = other.run_instances(ImageId=copy, MinCount=1, MaxCount=1, UserData="exit=halt")
iid2 = r2["Instances"][0]["InstanceId"]
check(r2["OwnerId"] == STRANGER, r2)
wait(other, "instance_running", InstanceIds=[iid2])
expect_error("InvalidInstanceID.NotFound", own.describe_instances, InstanceIds=[iid2])
expect_error("InvalidInstanceID.NotFound", own.terminate_instances, InstanceIds=[iid2])
other.terminate_instances(InstanceIds=[iid2])
wait(other, "instance_terminated", InstanceIds=[iid2])

step("unshare, description, reset")
own.modify_image_attribute(ImageId=copy, LaunchPermission={"Remove": [{"UserId": STRANGER}]})
check(other.describe_images()["Images"] == [], "unshared")
own.modify_image_attribute(ImageId=copy, Description={"Value": "second"})
check(own.describe_image_attribute(ImageId=copy, Attribute="description")["Description"]["Value"] == "second", "description")
own.modify_image_attribute(ImageId=copy, LaunchPermission={"Add": [{"Group": "all"}]})
check(copy in [i["ImageId"] for i in other.describe_images(ExecutableUsers=["all"])["Images"]], "public")
own.reset_image_attribute(ImageId=copy, Attribute="launchPermission")
check(other.describe_images()["Images"] == [], "reset launchPermission")

step("tags")
own.create_tags(Resources=[iid, new], Tags=[{"Key": "team", "Value": "core"}])
t = own.describe_tags(Filters=[{"Name": "key", "Values": ["team"]}])["Tags"]
check(sorted((x["ResourceId"], x["ResourceType"]) for x in t) == sorted([(iid, "instance"), (new, "image")]), t)
own.delete_tags(Resources=[iid], Tags=[{"Key": "team"}])
check(len(own.describe_tags(Filters=[{"Name": "key", "Values": ["team"]}])["Tags"]) == 1, "delete-tags")
expect_error("InvalidID", own.create_tags, Resources=["vpc-12345678"], Tags=[{"Key": "a", "Value": "b"}])

step("snapshots")
snaps = own.describe_snapshots(OwnerIds=["self"])["Snapshots"]
check(len(snaps) >= 3 and all(s["State"] == "completed" for s in snaps), snaps)
used = ni["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
expect_error("InvalidSnapshot.InUse", own.delete_snapshot, SnapshotId=used)

step("deregister, terminate")
r = own.deregister_image(ImageId=copy, DeleteAssociatedSnapshots=True)
check(r["Return"] is True, r)
own.deregister_image(ImageId=new)
expect_error("InvalidAMIID.NotFound", own.describe_images, ImageIds=[copy])
own.terminate_instances(InstanceIds=[iid])
wait(own, "instance_terminated", InstanceIds=[iid])
check(state(own, iid) == "terminated", "terminated")
expect_error("IncorrectInstanceState", own.start_instances, InstanceIds=[iid])

step("unknown action and parameters")
expect_error("InvalidAMIID.Malformed", own.describe_images, ImageIds=["ami-bogus"])
expect_error("InvalidKeyPair.NotFound", own.run_instances, ImageId=AMI, MinCount=1, MaxCount=1, KeyName="mine")
expect_error("DryRunOperation", own.describe_regions, DryRun=True)
print("OK")
