# Everything the node daemon of eks/daemonset/ needs outside its manifests, in one apply:
# - the log bucket, and an IAM role its service account (kube-system:logferry-node) assumes
#   through the cluster's OIDC provider (IRSA), with exactly the router's S3 permissions for
#   the ConfigMap's key prefix;
# - the RBAC of `kubernetes_metadata = "api"` (module logferry-eks-node-rbac): get/list/watch
#   on pods and namespaces, nothing more, bound to that service account.

data "aws_eks_cluster" "this" {
  name = var.cluster_name
}

data "aws_eks_cluster_auth" "this" {
  name = var.cluster_name
}

data "aws_iam_openid_connect_provider" "cluster" {
  url = data.aws_eks_cluster.this.identity[0].oidc[0].issuer
}

provider "kubernetes" {
  host                   = data.aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
}

locals {
  issuer = replace(data.aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
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

data "aws_iam_policy_document" "irsa_trust" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [data.aws_iam_openid_connect_provider.cluster.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "router" {
  name               = "${var.name}-node-router"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust.json
}

resource "aws_iam_role_policy" "router" {
  name   = "logferry"
  role   = aws_iam_role.router.id
  policy = module.iam.json
}

module "rbac" {
  source = "../../modules/logferry-eks-node-rbac"

  namespace        = var.namespace
  service_account  = var.service_account
  namespace_labels = var.namespace_labels
}
