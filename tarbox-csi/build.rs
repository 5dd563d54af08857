//! Compiles the CSI specification (`proto/csi.proto`, v1.12.0, unchanged) with a vendored
//! `protoc`, so building needs nothing installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = protoc_bin_vendored::include_path()?;
    set_protoc(&protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=../proto/csi.proto");
    let include = include
        .to_str()
        .ok_or("the vendored protoc's include path is not UTF-8")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["../proto/csi.proto"], &["../proto", include])?;
    Ok(())
}

/// prost-build runs the `protoc` that `PROTOC` names.
#[allow(unsafe_code)]
fn set_protoc(path: &std::path::Path) {
    // Edition 2024 makes `set_var` unsafe because of other threads; a build script has none.
    unsafe { std::env::set_var("PROTOC", path) };
}
