// `sqlx::migrate!` embeds the migrations at compile time; a new or edited one must rebuild us.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
