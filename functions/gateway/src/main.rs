fn main() -> tollgate::lambda::Exit {
    tollgate::lambda::run_gateway(gateway::catalog)
}
