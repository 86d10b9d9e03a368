//! Instances launched from images, and EC2 instance types.
