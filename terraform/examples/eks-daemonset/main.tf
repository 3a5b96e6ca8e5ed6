# Everything the node daemon of eks/daemonset/ needs outside its manifests, in one apply:
# - the log bucket, and an IAM role its service account (kube-system:logferry-node) assumes
#   through the cluster's OIDC provider (IRSA), with exactly the router's S3 permissions for
#   the ConfigMap's key prefix;
# - the RBAC of `kubernetes_metadata = "api"` (module logferry-eks-node-rbac): get/list/watch
#   on pods and namespaces, nothing more, bound to that service account.

provider "kubernetes" {
  host                   = module.role.cluster_endpoint
  cluster_ca_certificate = base64decode(module.role.cluster_ca)
  token                  = data.aws_eks_cluster_auth.this.token
}

data "aws_eks_cluster_auth" "this" {
  name = var.cluster_name
}

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
  s3_key_prefix = "logs/{kubernetes.namespace_name}/{kubernetes.pod_name}/%Y/%m/%d/%H/"
}

module "role" {
  source = "../../modules/logferry-irsa-role"

  name            = "${var.name}-node-router"
  cluster_name    = var.cluster_name
  namespace       = var.namespace
  service_account = var.service_account
  policy_json     = module.iam.json
}

module "rbac" {
  source = "../../modules/logferry-eks-node-rbac"

  namespace        = var.namespace
  service_account  = var.service_account
  namespace_labels = var.namespace_labels
}
