//! cloud-config: user data from the places a machine finds it, applied safely.

pub mod config;
pub mod datasource;
pub mod http;
pub mod multipart;
pub mod report;
pub mod userdata;
pub mod validate;
pub mod yaml;

pub use report::{Problem, Report, Severity};
pub use validate::{parse_user_data, validate, UserData};
pub mod apply;
pub mod metadata;
pub mod status;
pub mod supervisor;
