# The IAM role for the EKS manifests in eks/irsa/: the pods' service account assumes it through
# the cluster's OIDC provider (IRSA), and it holds exactly the router's permissions for the
# ConfigMap's s3 sink (key prefix logs/{kubernetes.namespace_name}/...). No IMDS needed.

module "destinations" {
  source = "../../modules/logferry-destinations"

  name_prefix      = var.name
  bucket_name      = var.bucket_name
  create_log_group = false
}

module "iam" {
  source = "../../modules/logferry-iam"

  region        = var.region
  s3_bucket     = module.destinations.bucket_name
  s3_key_prefix = "logs/{kubernetes.namespace_name}/%Y/%m/%d/%H/"
}

module "role" {
  source = "../../modules/logferry-irsa-role"

  name            = "${var.name}-router"
  cluster_name    = var.cluster_name
  namespace       = var.namespace
  service_account = var.service_account
  policy_json     = module.iam.json
}
