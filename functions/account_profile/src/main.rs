fn main() -> tollgate::lambda::Exit {
    tollgate::lambda::run_tool(account_profile::tool)
}
