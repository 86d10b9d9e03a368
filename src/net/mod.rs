//! Guest networking: the instance metadata service ([`imds`]).

pub mod imds;
