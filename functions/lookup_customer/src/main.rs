fn main() -> tollgate::lambda::Exit {
    tollgate::lambda::run_tool(lookup_customer::tool)
}
