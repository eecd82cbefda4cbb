//! Code generated from `proto/`: etcd's v3 API (packages `etcdserverpb`, `mvccpb`,
//! `authpb`) and qetcd's Raft log records (`qetcdpb`).

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod qetcdpb {
    tonic::include_proto!("qetcdpb");
}
